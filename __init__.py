"""VisTR for Hugging Face transformers: the `vistr` package.

The repository root is this package. Its modules fall in two groups:

* the files that travel with the weights (Hub remote code, flat in one folder, importing each other
  relatively): the model (`configuration_vistr`, `modeling_vistr`, `loss_vistr`, `deform_conv`,
  `frozen_batch_norm`), and above it the video processor (`image_processing_vistr`, `video_io`,
  `clip_linking`, `mask_upsampling`, `flip_averaging`) and the pipeline (`pipeline_vistr`);
* the tools, which import the model by its absolute name: `convert_checkpoint` and `train_accelerate`
  (scripts at the root, as documented) and the `vistr.tools` package (the `vistr` command, model cards and
  publishing, YouTube-VIS data, training clips, evaluation, split inference, overlays).

Importing the package wires these together, the one place this happens: VisTR is registered with
transformers' Auto classes and the "video-instance-segmentation" pipeline, and the model classes get their
folder publisher (`vistr.tools.model_card`: the card, processor and pipeline a saved folder needs). A folder
loaded with `trust_remote_code=True` needs no registration (its config's `auto_map` names the classes).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForInstanceSegmentation,
    AutoVideoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_vistr import VisTRConfig
from .image_processing_vistr import VisTRVideoProcessor
from .modeling_vistr import VisTRForVideoInstanceSegmentation, VisTRModel, VisTRPreTrainedModel
from .pipeline_vistr import TASK, VideoInstanceSegmentationPipeline
from .tools import model_card

AutoConfig.register("vistr", VisTRConfig, exist_ok=True)
AutoModel.register(VisTRConfig, VisTRModel, exist_ok=True)
AutoModelForInstanceSegmentation.register(VisTRConfig, VisTRForVideoInstanceSegmentation, exist_ok=True)
AutoVideoProcessor.register(VisTRConfig, VisTRVideoProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=VideoInstanceSegmentationPipeline, pt_model=AutoModelForInstanceSegmentation, type="video"
)
VisTRPreTrainedModel.folder_publisher = model_card

__all__ = [
    "TASK",
    "VideoInstanceSegmentationPipeline",
    "VisTRConfig",
    "VisTRForVideoInstanceSegmentation",
    "VisTRModel",
    "VisTRVideoProcessor",
]
