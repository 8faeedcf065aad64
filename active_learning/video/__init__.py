"""Video projects: frames as Label Studio numbers them, the video cache, tracking."""
