import os
from pathlib import Path

# Tests never reach the Hub; subprocesses (accelerate launch, fresh loaders) import this
# checkout's deft_llm, not whichever copy happens to be installed.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [REPO_ROOT, os.environ.get("PYTHONPATH")] if p)
