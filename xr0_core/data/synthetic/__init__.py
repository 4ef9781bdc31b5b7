"""Synthetic hospitals: phantom radiographs with ground truth, written as real DICOM sites (D7, D12)."""
