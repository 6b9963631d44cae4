//! Reading overlay dirs: a user's upper (with its lowers) as a changeset, and the merged view of a
//! store's lower layers that writing and diffing consult.

pub(crate) mod lower;
pub(crate) mod upper;
