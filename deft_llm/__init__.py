"""deft-llm: DEFT-LLM micro-expression recognition as a Hugging Face transformers model.

Importing the package registers the architecture with the Auto classes, so
``AutoModel.from_pretrained(folder)`` works without ``trust_remote_code`` once it is installed.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_deft import DeftConfig
from .modeling_deft import DeftForConditionalGeneration, DeftModel, DeftPreTrainedModel
from .processing_deft import DeftProcessor, DeftVideoProcessor

AutoConfig.register(DeftConfig.model_type, DeftConfig, exist_ok=True)
AutoModel.register(DeftConfig, DeftModel, exist_ok=True)
AutoModelForImageTextToText.register(DeftConfig, DeftForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(DeftConfig, slow_image_processor_class=DeftVideoProcessor, exist_ok=True)
AutoProcessor.register(DeftConfig, DeftProcessor, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["DeftConfig", "DeftModel", "DeftForConditionalGeneration", "DeftPreTrainedModel",
           "DeftProcessor", "DeftVideoProcessor"]
