"""Training: the reference teacher, knowledge distillation into students, quantization-aware fine-tuning."""
