"""The feedback stage: which labeled traffic a retrain uses and feeds back to the data pipeline
(`selection`), and the record of every run (`records`). The retrain itself strings the pipeline's
steps together in workflow/retrain.py."""
