"""What ``finalize`` writes next to the label image: the regions table
(:mod:`.regions`), the seam QC and pictures (:mod:`.qc`), the run summary
(:mod:`.summary`)."""
