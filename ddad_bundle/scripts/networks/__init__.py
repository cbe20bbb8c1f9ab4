"""Network architectures: the stage-1 reconstruction backbones (AE, MemAE, AE-U), the ASR-Net, fused ensembles."""
