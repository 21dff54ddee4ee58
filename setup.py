from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="deft-llm",
    version="0.1.0",
    description="DEFT-LLM: disentangled expert feature tuning for micro-expression recognition, "
    "as a Hugging Face transformers model",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["deft_llm", "deft_llm.*"]),
    package_data={"deft_llm": ["assets/**/*"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors",
        "numpy",
        "av>=14",
        # 4.x: the contrib build has TV-L1 (cv2.optflow) and ships the Haar cascades; 5.0 does not.
        "opencv-contrib-python-headless>=4.9,<5",
        "datasets>=4",
        "huggingface_hub",
        "trl>=1.0",
        "peft>=0.15",
        "accelerate>=1.0",
        "openpyxl",
        "pandas",
        "matplotlib",
        "tqdm",
        "pyyaml",
    ],
    extras_require={
        "demo": ["gradio>=5", "gradio_client"],
        "dev": ["pytest", "playwright", "gradio>=5", "gradio_client"],
    },
    entry_points={"console_scripts": ["deft-llm=deft_llm.cli:main"]},
)
