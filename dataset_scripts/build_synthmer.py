"""Write SynthMER clips (lossless FFV1 videos, labels, true apex flow) to a folder.

    python dataset_scripts/build_synthmer.py out/synthmer --clips 200 --fps 100 --difficulty medium
"""
import sys

from deft_llm.data import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
