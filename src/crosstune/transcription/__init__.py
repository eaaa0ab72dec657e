"""Speech recognition (``prepare.task: transcription``): Whisper fine-tuned end to end, scored by word error rate."""
