"""The web UI (gradio). Only modules under studio/ui/ import gradio; `studio webui` starts it (serve.py)."""
