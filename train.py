"""Run from the repository root: ``python train.py --trainer VMFCoOp ...`` (same flags as Dassl)."""
import os
import sys

# The repository root holds a folder named ``datasets``; keep it off sys.path so it never shadows
# the Hugging Face package. The project itself is imported from its installed namespace.
_root = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]

try:
    from vmfcoop.engine.cli import main
except ImportError as err:
    sys.exit(f"error: vmfcoop is not installed ({err}). Run `pip install -e .` in {_root} first.")

if __name__ == "__main__":
    sys.exit(main())
