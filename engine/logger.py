"""Tee stdout into ``log.txt`` (Dassl behaviour) and restore it cleanly afterwards."""
import os
import sys
import time

from .utils import mkdir_if_missing


class _Tee:
    def __init__(self, stream, fpath):
        self.stream = stream
        self.file = open(fpath, "a", buffering=1)

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


class LogSession:
    """Active while a run writes its log; ``close()`` restores the previous stdout."""

    def __init__(self, fpath):
        self.fpath = fpath
        self._previous = sys.stdout
        sys.stdout = _Tee(self._previous, fpath)

    def close(self):
        if isinstance(sys.stdout, _Tee) and sys.stdout.file.name == self.fpath:
            sys.stdout.file.close()
            sys.stdout = self._previous


def setup_logger(output=None):
    """Log to ``output`` if it names a .txt/.log file, else ``output/log.txt``; never overwrite a log."""
    if output is None:
        return None
    fpath = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
    if os.path.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    mkdir_if_missing(os.path.dirname(os.path.abspath(fpath)))
    return LogSession(fpath)
