"""``deft-llm``: one command for the project's front doors.

    deft-llm demo [--checkpoint PATH_OR_HUB_ID]     the Gradio demo (bundled checkpoint by default)
    deft-llm predict CLIP [--onset N --apex N]      one clip -> emotion, AU evidence, explanation (JSON)
    deft-llm data synth|build|push ...              SynthMER and Uni-MER (see deft_llm.data)
    deft-llm train --config RECIPE.yaml ...         deft_llm.sft (use `accelerate launch -m deft_llm.sft`
                                                    for several processes)
    deft-llm evaluate --config RECIPE.yaml ...      LOSO evaluation (deft_llm.evaluate)
"""

from __future__ import annotations

import sys


def _demo(argv):
    from .demo import main
    return main(argv)


def _predict(argv):
    from .demo import predict_main
    return predict_main(argv)


def _data(argv):
    from .data import main
    return main(argv)


def _train(argv):
    from .sft import main
    return main(argv)


def _evaluate(argv):
    from .evaluate import main
    return main(argv)


COMMANDS = {"demo": _demo, "predict": _predict, "data": _data, "train": _train, "evaluate": _evaluate}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
