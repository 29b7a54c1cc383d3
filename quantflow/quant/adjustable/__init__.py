"""Adjustable mixed-precision quantization (after the Texas-EIC MicroNet entry,
tilmto/Adjustable-Quantization-MicroNet): every weight channel and every activation
channel trains its own range (alpha) and precision (beta); the loss adds the MicroNet
score (`quantflow.quant.micronet`) to the task, so bit widths fall where they cost least.

    model   = build_model(float_model, settings)        # adjustable quantizers everywhere
    calibrate(model, images, settings)                  # T per channel, alpha = beta = 1
    graph   = ScoreGraph(model, micronet.count_model(float_model))
    result  = train(float_model, model, graph, data, settings, ...)

The fake-quant graph is the FAT transform's (`quantflow.quant.transform.fake_quant_model`) with the
"adjustable" quantizers (`quantflow.quant.quantizers.adjustable`) for weights (per output channel)
and activations (per channel); bit bounds `min_bits` .. `max_bits`, initial width
`weight_bits` / `activation_bits` (8). The folded kernels and biases train too.

Loss = cls_weight * cross-entropy(labels) + kd_weight * MSE(float logits, logits)
       + metric_weight * (parameter score + operation score),
where a multiplication's max(w, a) bits pass 1 - gamma of their gradient to the weight's
bits and gamma to the activation's (the reference's soft_reduce_max_op; its value is the
true maximum). With `target_score`, as the reference's `metric`, the metric term changes
sign below the target: the bits fall while the score is above it and may rise below.

Schedule: each epoch is `mini_epochs` mini-epochs; bit widths train in the odd ones (1st,
3rd, ...) and stay fixed in the others. After each mini-epoch the held-out accuracy and
the exact score are measured and a checkpoint written; the best checkpoint is the lowest
score whose held-out top-1 is within `tolerance` percentage points of the float model's
(else the most accurate one). Fine-tuning: from the best checkpoint, bit widths fixed,
`swa_epochs` more epochs with stochastic weight averaging (the running mean of the
weights and ranges, sampled every `swa_freq` of an epoch after `swa_delay` of it); the
averaged model is kept if its held-out accuracy is at least the best checkpoint's.

Differences from the reference, deliberately: biases are not quantized below 32 bits
(TFLite stores int32 biases; the score counts them at 32 bits); the model input keeps its
fixed 8-bit range; the learning rates and lengths suit a few CPU minutes, not 3 epochs
of ImageNet.
"""
