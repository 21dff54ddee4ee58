"""Build Uni-MER (Hub layout: data/*.parquet + README.md card) from SynthMER and/or your
licensed copies of CASME II / SAMM / SMIC-HS / CAS(ME)^3. An interrupted build resumes.

    python dataset_scripts/build_uni_mer.py out/uni-mer --source synthmer --clips 500
    python dataset_scripts/build_uni_mer.py out/uni-mer --source casme2=/data/CASME2 \
        --source samm=/data/SAMM --source smic_hs=/data/SMIC --skip-missing
"""
import sys

from deft_llm.data import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
