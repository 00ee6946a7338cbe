"""What a clinician reads and a PACS stores: the figures (QC, bull's-eye, evaluation), AHA segments
anchored to the RV insertion, DICOM SEG output, and the glue ``inference`` calls (``io``)."""
