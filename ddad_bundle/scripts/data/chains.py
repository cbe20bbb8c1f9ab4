"""What a modality's transform chain (config key ``preprocessing``) is made of, for inference.

The chain starts with the file loaders (``LoadMedicalImaged``, ``LoadMaskd``) and continues with
array transforms (resize, intensity scaling, ...). Inference needs the two parts apart: a slice of
a 3D volume is read by the chain's own loader with another slice index and then transformed by the
array part, and the overlay of a result is drawn on the image as that loader reads it.

Example::

    >>> loader = image_loader(preprocessing)           # the run's LoadMedicalImage (channels, VOI, ...)
    >>> prepared = without_loading(preprocessing)({"image": loader(path)})
"""

from __future__ import annotations

from monai.transforms import Compose

from .readers import LoadMaskd, LoadMedicalImage, LoadMedicalImaged, MedicalImageReader


def without_loading(preprocessing: Compose) -> Compose:
    """The chain minus its file loaders, to apply it to arrays (slices of a volume). The transforms
    are the chain's own objects, so ``Invertd`` with the whole chain inverts what this part applied."""
    return Compose([t for t in preprocessing.transforms if not isinstance(t, (LoadMedicalImaged, LoadMaskd))])


def image_loader(preprocessing: Compose) -> LoadMedicalImage:
    """The chain's image loader, with the run's settings (channels, VOI window, clipping)."""
    for transform in preprocessing.transforms:
        if isinstance(transform, LoadMedicalImaged):
            return transform._loader
    raise ValueError("the 'preprocessing' chain has no scripts.data.readers.LoadMedicalImaged loader")


def slice_reader(loader: LoadMedicalImage, index: int) -> MedicalImageReader:
    """A reader with ``loader``'s settings that reads slice ``index`` of a 3D NIfTI volume."""
    reader = loader.medical_reader
    return MedicalImageReader(reader.channels, int(index), reader.voi_window, reader.robust_clip, reader.min_image_size)
