"""What this plugin registers where, and which ESPnet modules it fixes: plain tables, read at
interpreter start by the import hook (so: no imports here)."""

DISABLE_ENV = "ESPNET_MAMBA_DISABLE_HOOK"

ENCODERS = {
    "samba_asr": "espnet_mamba.encoders.samba_asr:SambaASREncoder",
    "speech_mamba": "espnet_mamba.encoders.speech_mamba:SpeechMambaEncoder",
}
DECODERS = {
    "samba_asr": "espnet_mamba.decoders.samba_asr:SambaASRDecoder",
    "speech_mamba": "espnet_mamba.decoders.speech_mamba:SpeechMambaDecoder",
}

# {ESPnet task module: {ClassChoices attribute: {name: "module:Class"}}}.  Tasks whose
# encoder reads acoustic features and whose decoder is an attention-style AbsDecoder.
REGISTRY: dict[str, dict[str, dict[str, str]]] = {
    "espnet2.tasks.asr": {"encoder_choices": ENCODERS, "decoder_choices": DECODERS},
    "espnet2.tasks.st": {"encoder_choices": ENCODERS, "decoder_choices": DECODERS,
                         "extra_asr_decoder_choices": DECODERS,
                         "extra_mt_decoder_choices": DECODERS},
    "espnet2.tasks.s2t": {"encoder_choices": ENCODERS, "decoder_choices": DECODERS},
    "espnet2.tasks.s2t_ctc": {"encoder_choices": ENCODERS},
    "espnet2.tasks.slu": {"encoder_choices": ENCODERS, "decoder_choices": DECODERS},
    "espnet2.tasks.enh_s2t": {"asr_encoder_choices": ENCODERS,
                              "asr_decoder_choices": DECODERS,
                              "st_encoder_choices": ENCODERS, "st_decoder_choices": DECODERS},
}

# {ESPnet module: ("module:function", ...)} run right after that module executes, before any other
# module imports names from it.  Fixes that leave every result unchanged: linear memory for
# ESPnet's pad masks, a clear (and per-utterance skippable) error for audio too short to STFT,
# the utterance ids of a training batch with NaN/inf input in the log; CTC prefix scores of the
# batched beam search without a Python loop over frames (ctc_prefix.py, ESPNET_MAMBA_CTC_PREFIX);
# a warning naming the utterance whose hypothesis ended far too early for its audio (early_stop.py).
# A module may have several patches: they run in the order given.
POST_IMPORT = {
    "espnet2.legacy.nets.pytorch_backend.nets_utils": ("espnet_mamba.integration.pad_mask:patch",),
    "espnet2.layers.stft": ("espnet_mamba.integration.stft:patch",),
    "espnet2.asr.espnet_model": ("espnet_mamba.integration.nonfinite_batches:patch",),
    "espnet2.legacy.nets.scorers.ctc": ("espnet_mamba.integration.ctc_prefix:patch_scorer",),
    "espnet2.legacy.nets.beam_search": ("espnet_mamba.integration.ctc_prefix:patch_beam_search",
                                        "espnet_mamba.integration.early_stop:patch"),
    "espnet2.legacy.nets.batch_beam_search": ("espnet_mamba.integration.early_stop:patch",),
    "espnet2.tasks.abs_task": ("espnet_mamba.integration.early_stop:patch",),
}
