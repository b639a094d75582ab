"""Training batches (the spec's last box): P x K batches in plan order with images or features, mined negatives,
event-linked positives, weights, sources and augmentation; see `visprep.training.batches`."""

from visprep.training.batches import FeaturePayload, PixelPayload, TrainingBatches, TrainingSource, as_tensors

__all__ = ["FeaturePayload", "PixelPayload", "TrainingBatches", "TrainingSource", "as_tensors"]
