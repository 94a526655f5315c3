# Generated gRPC stubs of proto/idem/v1 (idempotency_pb2.py, admin_pb2.py and
# their _grpc modules) are written here by the CMake build; not in git.
