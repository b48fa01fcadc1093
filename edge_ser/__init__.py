"""edge-ser: real-time speech emotion recognition at the edge (VAD, Whisper-encoder emotion model,
temporal smoothing, emotion-shift events over MQTT)."""

__version__ = "0.1.0"
