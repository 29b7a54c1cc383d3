"""How a training job (train, fat, adjustable) spreads over devices: a `tf.distribute`
strategy chosen by config and the job's resources (`quantflow.distribute.strategy`)."""
