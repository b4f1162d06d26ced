"""The web actor: an OpenAI-compatible HTTP front end (POST /v1/audio/speech) to the narration pipeline."""
