"""Feature processing (fit/transform with train-serve parity) and the feature store."""

from ray_pipeline.features.fit import fit
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.features.transform import transform, transform_records, transform_table

__all__ = ["FeatureSpec", "fit", "transform", "transform_records", "transform_table"]
