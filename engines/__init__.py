"""Export and compile trained edge-ser emotion models into the engines the runtime backends load."""
