"""Upload a built Uni-MER folder to a Hub dataset repo, private unless --public is given.

    python dataset_scripts/push_uni_mer.py out/uni-mer your-name/uni-mer
"""
import sys

from deft_llm.data import main

if __name__ == "__main__":
    sys.exit(main(["push", *sys.argv[1:]]))
