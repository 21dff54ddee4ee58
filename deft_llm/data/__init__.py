"""Data side of deft-llm: SynthMER, readers for the licensed MER datasets, and Uni-MER.

* :mod:`.synthmer` - the procedural micro-expression generator (embedded default data).
* :mod:`.readers` - CASME II, SAMM, SMIC-HS, CAS(ME)^3 Part A, 4DME and SynthMER folders ->
  :class:`ClipRecord`.
* :mod:`.uni_mer` - the dual constraint, the instruction templates and the Hub-layout build.
* :mod:`.cli` - ``python -m deft_llm.data synth|build|push ...`` (:func:`main`).
"""

from .readers import (DATASETS, ClipRecord, LabelError, MissingDataError, ReadResult, read_4dme,
                      read_casme2, read_casme3_a, read_dataset, read_samm, read_smic_hs,
                      read_synthmer)
from .synthmer import DIFFICULTY, Nuisance, SynthClip, SynthConfig, SynthMER, write_synthmer
from .uni_mer import (BuildConfig, BuildReport, DualConstraint, build_uni_mer, dual_constraint,
                      example_frames, load_uni_mer, process_clip, push_to_hub)


def main(argv=None) -> int:
    """Command line entry (``deft-llm data ...`` / ``python -m deft_llm.data ...``)."""
    from .cli import main as _main

    return _main(argv)


__all__ = [
    "DATASETS", "ClipRecord", "LabelError", "MissingDataError", "ReadResult", "read_4dme",
    "read_casme2", "read_casme3_a", "read_dataset", "read_samm", "read_smic_hs", "read_synthmer",
    "DIFFICULTY", "Nuisance", "SynthClip", "SynthConfig", "SynthMER", "write_synthmer",
    "BuildConfig", "BuildReport", "DualConstraint", "build_uni_mer", "dual_constraint",
    "example_frames", "load_uni_mer", "process_clip", "push_to_hub", "main",
]
