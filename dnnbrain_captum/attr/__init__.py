"""Attribution classes: saliency, upsampled activation maps, occlusion, masked and minimal images."""

__all__: list[str] = []
