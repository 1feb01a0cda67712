"""The project's vocabulary: label codes, region codes and names, counting methods.

Every module takes these names from here, so that a code or a spelling lives in one place.

FreeSurfer look-up-table codes
    Written to ``anatomy.nii.gz`` (the T1 grid) and read from users' aseg-coded maps.
Region codes
    The values of ``regions.nii.gz`` (the T2 grid); their names are those of ``counts.tsv``.
Methods
    The networks (``gpunet``, ``cnn``) and the Frangi baseline (``frangi``, a filter, not a
    network); the names of ``counts.tsv``'s ``model`` column.
"""
from __future__ import annotations

# --- FreeSurfer codes kept in anatomy.nii.gz (pairs are left, right) ---
WM = (2, 41)
CORTEX = (3, 42)
LATERAL_VENTRICLE = (4, 43)
THALAMUS = (10, 49)
CAUDATE = (11, 50)
PUTAMEN = (12, 51)
PALLIDUM = (13, 52)
HIPPOCAMPUS = (17, 53)
AMYGDALA = (18, 54)
BRAINSTEM = 16
MIDBRAIN = 173
"""FreeSurferColorLUT 'Midbrain' (brainstem-substructures code)."""
WM_LESION = 77
"""FreeSurfer 'WM-hypointensities', used for white-matter lesions."""

ATLAS_LABEL_FILES: dict[str, str] = {"fused": "template_labels.nii.gz", "samseg": "template_labels_samseg.nii.gz"}
"""The shipped template's label maps (``Settings.atlas_labels`` -> file in ``pvsquant/data/atlas``)."""

# --- groups of aseg codes by tissue, for painting synthetic images from label maps ---
CSF_CODES = (4, 5, 14, 15, 24, 43, 44, 72)
WM_CODES = (2, 41, 7, 46, 28, 60, 85)
CORTEX_CODES = (3, 42, 8, 47)
DEEP_GM_CODES = (11, 50, 12, 51, 17, 53, 18, 54, 26, 58)
LESION_CODES = (25, 57, 77, 99)

# --- counting regions (regions.nii.gz) ---
REGION_CODES: dict[str, int] = {
    "centrum_semiovale": 1,
    "basal_ganglia": 2,
    "hippocampi": 3,
    "midbrain": 4,
}
"""Label values of ``regions.nii.gz``; the names are those of ``counts.tsv``."""
REGION_TITLES: dict[str, str] = {
    "centrum_semiovale": "centrum semiovale",
    "basal_ganglia": "basal ganglia",
    "hippocampi": "hippocampi",
    "midbrain": "midbrain",
}
"""Region names for people (figures, reports)."""

# --- counting methods (counts.tsv's model column) ---
NETWORKS = ("gpunet", "cnn")
"""The two networks of Dubost et al., with shipped weights ``<region>_<network>.pt``."""
METHODS = (*NETWORKS, "frangi")
"""Everything that gives a count: the networks and the Frangi baseline."""
METHOD_TITLES: dict[str, str] = {"gpunet": "GP-Unet", "cnn": "CNN", "frangi": "Frangi"}
"""Method names for people (figures, reports)."""
