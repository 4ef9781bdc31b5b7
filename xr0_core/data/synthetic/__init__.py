"""Synthetic hospitals: phantom radiographs with ground truth, written as real DICOM sites (D7, D12).

Modules, in the order data flows through them:

- :mod:`.geometry`      pose (:class:`Frame`) and signed-distance drawing primitives;
- :mod:`.sketch`        the attenuation layers and named places an anatomy is drawn into;
- :mod:`.phantoms`      one drawer per anatomy (chest, hand, knee, spine, pelvis, skull);
- :mod:`.findings`      nodule, effusion, fracture, implant at known positions;
- :mod:`.reports`       report text from a fixed template set;
- :mod:`.render`        :func:`render_image` -> :class:`Phantom` (image, masks, landmarks, boxes, labels);
- :mod:`.dicom_writer`  a phantom as a DICOM file the way one hospital's scanner encodes it;
- :mod:`.sites`         non-IID :class:`SiteSpec`\\ s, :func:`write_site`, :func:`write_federation`.
"""

from xr0_core.data.synthetic.findings import FINDINGS, PREVALENCE
from xr0_core.data.synthetic.phantoms import MAIN_STRUCTURE, VIEWS
from xr0_core.data.synthetic.render import ANATOMIES, Phantom, render_image
from xr0_core.data.synthetic.sites import SiteSpec, make_site_specs, write_federation, write_site

__all__ = [
    "ANATOMIES",
    "FINDINGS",
    "MAIN_STRUCTURE",
    "PREVALENCE",
    "VIEWS",
    "Phantom",
    "SiteSpec",
    "make_site_specs",
    "render_image",
    "write_federation",
    "write_site",
]
