"""Format codecs shared by source adapters, frame streaming and sample writers: TFRecord and tf.train.Example,
frames inside TFRecord episodes, image datasets in HDF5."""
