#!/usr/bin/env python3
"""Run dump.py on several roots in one process (interpreter startup dominated the hostile suite).

usage: hostile_dumps.py ROOT...
Writes, for each ROOT in order, a line "== ROOT" and then exactly what `dump.py ROOT` writes.
"""
import contextlib
import io
import os
import runpy
import sys

dump_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dump.py")
for root in sys.argv[1:]:
    buf = io.StringIO()
    sys.argv = [dump_py, root]
    with contextlib.redirect_stdout(buf):
        runpy.run_path(dump_py, run_name="__main__")
    sys.stdout.write("== %s\n%s" % (root, buf.getvalue()))
