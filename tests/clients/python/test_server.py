"""The server as any gRPC tool sees it: health, reflection, and the admin service."""

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from harness import ADMIN, ClientTest, admin_pb2, admin_pb2_grpc, bearer, channel

SERVICES = [
    "quintet.admin.v1.AdminService",
    "quintet.griot.v1.GriotService",
    "quintet.market.v1.MarketService",
    "quintet.pds.v1.PdsService",
    "quintet.registry.v1.RegistryService",
    "quintet.store.v1.StoreService",
]


class HealthTest(ClientTest):
    def test_whole_server_and_each_service_are_serving(self):
        health = health_pb2_grpc.HealthStub(channel())
        serving = health_pb2.HealthCheckResponse.SERVING
        self.assertEqual(health.Check(health_pb2.HealthCheckRequest()).status, serving)
        for service in SERVICES:
            with self.subTest(service=service):
                response = health.Check(health_pb2.HealthCheckRequest(service=service))
                self.assertEqual(response.status, serving)

    def test_unknown_service_is_not_found(self):
        health = health_pb2_grpc.HealthStub(channel())
        self.fails(
            grpc.StatusCode.NOT_FOUND,
            health.Check,
            health_pb2.HealthCheckRequest(service="quintet.nope.v1.NopeService"),
        )


class ReflectionTest(ClientTest):
    def test_lists_every_service_and_serves_their_descriptors(self):
        database = ProtoReflectionDescriptorDatabase(channel())
        services = set(database.get_services())
        for service in SERVICES + ["grpc.health.v1.Health"]:
            self.assertIn(service, services)
        # The descriptors are complete enough to build a client from: methods with their
        # streaming shapes and message fields, imports (Timestamp, Struct) resolved.
        pool = descriptor_pool.DescriptorPool(database)
        registry = pool.FindServiceByName("quintet.registry.v1.RegistryService")
        publish = registry.methods_by_name["PublishPackage"]
        self.assertTrue(publish.client_streaming)
        self.assertFalse(publish.server_streaming)
        self.assertEqual(publish.input_type.full_name, "quintet.registry.v1.PublishPackageRequest")
        self.assertIn("header", publish.input_type.fields_by_name)
        download = registry.methods_by_name["DownloadVersion"]
        self.assertTrue(download.server_streaming)
        store = pool.FindServiceByName("quintet.store.v1.StoreService")
        manifest = pool.FindMessageTypeByName("quintet.store.v1.Manifest")
        self.assertEqual(manifest.fields_by_name["tags"].message_type.full_name, "google.protobuf.Struct")
        self.assertIn("PutObject", store.methods_by_name)


class AdminTest(ClientTest):
    def test_server_info_for_the_admin(self):
        admin = admin_pb2_grpc.AdminServiceStub(channel())
        info = admin.GetServerInfo(admin_pb2.GetServerInfoRequest(), metadata=ADMIN)
        self.assertRegex(info.version, r"^\d+\.\d+\.\d+")
        self.assertEqual(info.database.mode, admin_pb2.DATABASE_MODE_EMBEDDED)
        self.assertGreater(info.database.migrations_applied, 0)
        statuses = {s.name: s.serving for s in info.services}
        for service in SERVICES:
            self.assertTrue(statuses.get(service), f"{service} not serving in {statuses}")

    def test_wrong_or_missing_token_is_unauthenticated(self):
        admin = admin_pb2_grpc.AdminServiceStub(channel())
        failure = self.fails(
            grpc.StatusCode.UNAUTHENTICATED,
            admin.GetServerInfo,
            admin_pb2.GetServerInfoRequest(),
            metadata=bearer("wrong"),
        )
        self.assertEqual(failure.reason, "UNAUTHENTICATED")
        self.fails(grpc.StatusCode.UNAUTHENTICATED, admin.GetServerInfo, admin_pb2.GetServerInfoRequest())
