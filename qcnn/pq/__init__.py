"""Product quantization of conv and FC layers (Quantized-CNN, Wu et al., CVPR 2016)."""
