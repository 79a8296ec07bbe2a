"""GGUF export: llama.cpp's converter, llama_model_quantize, the Modelfile from the tokenizer's own template."""
