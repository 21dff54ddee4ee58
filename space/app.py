"""Hugging Face Space entry point: the DEFT-LLM demo (all logic lives in deft_llm/demo.py).

Locally: `python space/app.py` (or `deft-llm demo`). On a Space, `deft_llm` comes from
requirements.txt or from a `deft_llm/` folder uploaded beside this file (see README.md).
DEFT_CHECKPOINT selects another checkpoint folder or Hub id.
"""

import sys
from pathlib import Path

try:
    import deft_llm  # noqa: F401
except ImportError:   # a source checkout that is not pip-installed: use the package next door
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deft_llm.demo import build_demo, launch_kwargs

demo = build_demo()

if __name__ == "__main__":
    demo.queue().launch(**launch_kwargs())
