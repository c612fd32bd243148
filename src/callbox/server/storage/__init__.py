"""Where recordings' audio lives beyond the local disk: an S3 API (`s3`) and the queue that
moves finished recordings there (`uploads`)."""
