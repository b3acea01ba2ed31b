"""Request and response models; they also shape the OpenAPI document."""
