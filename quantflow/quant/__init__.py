"""The quantization core shared by FAT, adjustable mixed precision, weight-only
quantization and the MicroNet score. Import the module you need; this package imports
nothing (a job's code digest then covers only what it runs).

    schemes     FAT scheme names: w<bits>a<bits>-<sym|asym>-<pc|pt>
    config      WHAT each layer gets: scheme defaults + overrides by layer-name glob (no TF)
    registry    the quantizer registry (implementations register themselves by kind, name)
    quantizers/ HOW a tensor is quantized: base (the interface), fat, adjustable
    ops         pure tensor math: fake quant with FAT/STE gradients, TFLite integer arithmetic
    layers      the Keras layers ("quantflow>ClassName"): ActivationQuant, QConv2D, ...
    rules       what TFLite does with each layer / activation (fusing, fixed ranges, grids)
    graph       flattening a functional model (nested models expanded)
    folding     kernels, BatchNorm folding, Rescaling / Normalization as MUL / ADD constants
    transform   the graph walk that builds the fake-quant model (`fake_quant_model`)
    calibrate   calibration, the thresholds report, quantizer accessors
    packed      the packed size of a fake-quant model
    weightonly/ weight-only bin and fixed-point quantization of a weights.pickle
    fat/        FAT threshold training and the thresholds file
    adjustable/ adjustable mixed precision: settings, score graph, training, export
    micronet/   the MicroNet score: counting a model, scoring bit widths
"""
