"""ESPnet decoders (AbsDecoder + BatchScorerInterface) with fixed-size recurrent states."""
