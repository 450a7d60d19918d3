"""A closed output (``hostbus ... | head -1``) ends a command quietly."""

import os
import subprocess
import sys


def test_a_closed_pipe_ends_the_command_quietly_with_141():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "console.cli", "schema", "host"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              check=False)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
