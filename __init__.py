"""VisTR for Hugging Face transformers: the `vistr` package.

The repository root is this package. Its modules fall in two groups:

* the model, the files that travel with the weights (Hub remote code, flat in one folder, importing
  each other relatively): `configuration_vistr`, `modeling_vistr`, `loss_vistr`, `deform_conv`,
  `image_processing_vistr`, `video_io`, `pipeline_vistr`, `model_card`;
* the tools, which import the model by its absolute name: `convert_checkpoint` and `train_accelerate`
  (scripts at the root, as documented) and the `vistr.tools` package (the `vistr` command, YouTube-VIS
  data, training clips, evaluation, split inference, overlays).

Importing the package registers VisTR with transformers' Auto classes and the
"video-instance-segmentation" pipeline: the one place this happens. A folder loaded with
`trust_remote_code=True` needs no registration (its config's `auto_map` names the classes).
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
from .modeling_vistr import VisTRForVideoInstanceSegmentation, VisTRModel
from .pipeline_vistr import TASK, VideoInstanceSegmentationPipeline

AutoConfig.register("vistr", VisTRConfig, exist_ok=True)
AutoModel.register(VisTRConfig, VisTRModel, exist_ok=True)
AutoModelForInstanceSegmentation.register(VisTRConfig, VisTRForVideoInstanceSegmentation, exist_ok=True)
AutoVideoProcessor.register(VisTRConfig, VisTRVideoProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=VideoInstanceSegmentationPipeline, pt_model=AutoModelForInstanceSegmentation, type="video"
)

__all__ = [
    "TASK",
    "VideoInstanceSegmentationPipeline",
    "VisTRConfig",
    "VisTRForVideoInstanceSegmentation",
    "VisTRModel",
    "VisTRVideoProcessor",
]
