"""Images as uint8 arrays: a folder, CelebA (through tfds, without TensorFlow) or the built-in
synthetic faces, decoded once into a cache; the epoch order."""
