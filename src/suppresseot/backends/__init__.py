"""Framework backends: everything framework-specific (models, autograd, memory stats) lives here."""
