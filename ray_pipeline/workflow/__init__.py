"""Where the stages are strung together: the pipeline run (`pipeline`) and a feedback retrain (`retrain`)."""
