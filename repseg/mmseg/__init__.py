"""mmsegmentation integration: importing repseg registers these in mmseg's registries."""
from .backbone import RepVGGBackbone, check_pretrained_exists

__all__ = ['RepVGGBackbone', 'check_pretrained_exists']
