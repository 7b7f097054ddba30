"""Market: a seller signs in with an OpenID Connect ID token, uploads a CSV, offers and publishes
it; a buyer finds it, proves a Sui address (signing in Python as a wallet would), pays through
the stand-in ledger, buys, downloads and decrypts it with their own X25519 key, and reviews it.
Then the AI chat about the datapod."""

import base64
import hashlib
import os
import signal
import subprocess

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import field_mask_pb2

from harness import (
    BIN_DIR,
    ESCROW_ADDRESS,
    LEDGER_LISTEN,
    ClientTest,
    bearer,
    channel,
    chunks,
    id_token,
    market_pb2 as pb,
    market_pb2_grpc,
    unique,
    wait_until,
)

PRICE = 3_000_000_000  # 3 SUI, in MIST

CSV = (
    "city,temp_c,coastal\n"
    "Oslo,4.5,true\n"
    "Lima,19.25,true\n"
    "La Paz,8.0,false\n"
    "Reykjavik,1.75,true\n"
).encode()


class SuiWallet:
    """What a Sui wallet's signPersonalMessage does, for an Ed25519 key."""

    def __init__(self):
        self.key = Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.address = "0x" + hashlib.blake2b(b"\x00" + self.public, digest_size=32).hexdigest()

    def sign_personal_message(self, message: bytes) -> str:
        length, n = bytearray(), len(message)
        while True:  # BCS: the vector's ULEB128 length, then its bytes
            byte, n = n & 0x7F, n >> 7
            length.append(byte | (0x80 if n else 0))
            if not n:
                break
        digest = hashlib.blake2b(bytes([3, 0, 0]) + bytes(length) + message, digest_size=32).digest()
        return base64.b64encode(b"\x00" + self.key.sign(digest) + self.public).decode()


def decrypt_download(messages, private_key):
    """The buyer's side of DownloadDataset, from the DownloadHeader's documentation."""
    header = messages[0].header
    ciphertext = b"".join(m.chunk for m in messages[1:])
    purchase_id = header.purchase.id.encode()
    ephemeral, nonce, sealed = header.wrapped_key[:32], header.wrapped_key[32:44], header.wrapped_key[44:]
    mine = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    wrapping_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral + mine,
        info=b"quintet.market.buyer-key.v1" + purchase_id,
    ).derive(shared)
    dataset_key = AESGCM(wrapping_key).decrypt(nonce, sealed, purchase_id)
    aes = AESGCM(dataset_key)
    sealed_segment = header.segment_size + 16
    plain = b""
    segments = list(chunks(ciphertext, sealed_segment)) or [b""]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        counter = int.from_bytes(header.base_nonce[4:], "big") ^ index
        segment_nonce = header.base_nonce[:4] + counter.to_bytes(8, "big")
        aad = b"quintet.market.dataset.v1" + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")
        plain += aes.decrypt(segment_nonce, segment, aad)
    return header, plain


class StandInLedger:
    """`quintet-bench sui-ledger`: records the payments, prints their digests, serves them."""

    def __init__(self, *payments):
        args = [os.path.join(BIN_DIR, "quintet-bench"), "sui-ledger", "--listen", LEDGER_LISTEN]
        for sender, mist in payments:
            args += ["--pay", f"{sender}:{ESCROW_ADDRESS}:{mist}"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.digests = [self.process.stdout.readline().strip() for _ in payments]
        ready = self.process.stderr.readline()
        if "stand-in Sui ledger on" not in ready:
            self.stop()
            raise AssertionError(f"the stand-in ledger did not start: {ready!r}")

    def stop(self):
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


class MarketFlowTest(ClientTest):
    def sign_in(self, market, who):
        token = id_token(f"sub-{who}", f"{who}@example.com", who.replace("-", " ").title())
        response = market.SignIn(pb.SignInRequest(id_token=token))
        self.assertTrue(response.created)
        self.assertEqual(response.user.email, f"{who}@example.com")
        self.assertRegex(response.user.salt, r"^[0-9a-f]{64}$")
        return bearer(response.session_token)

    def test_sell_buy_download_review_chat(self):
        market = market_pb2_grpc.MarketServiceStub(channel())
        seller_name, buyer_name = unique("py-seller"), unique("py-buyer")

        # Sign-in: a token for another audience is refused.
        wrong = id_token(f"sub-{seller_name}", f"{seller_name}@example.com", "x", aud="someone-else")
        self.fails(grpc.StatusCode.UNAUTHENTICATED, market.SignIn, pb.SignInRequest(id_token=wrong))
        seller = self.sign_in(market, seller_name)
        me = market.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=seller).user
        self.assertEqual(me.google_id, f"sub-{seller_name}")

        # Upload: encrypted as it streams; the schema is inferred.
        def upload():
            yield pb.UploadDatasetRequest(header=pb.DatasetHeader(file_type="text/csv"))
            for piece in chunks(CSV, 20):
                yield pb.UploadDatasetRequest(chunk=piece)

        dataset = market.UploadDataset(upload(), metadata=seller).dataset
        self.assertEqual(dataset.file_size, len(CSV))
        self.assertEqual(dataset.data_hash, hashlib.sha256(CSV).hexdigest())
        self.assertGreater(dataset.storage_size, len(CSV))
        schema = dict(dataset.schema)
        self.assertEqual([c["name"] for c in schema["columns"]], ["city", "temp_c", "coastal"])
        self.assertEqual(schema["row_count"], 4)
        self.assertEqual(dataset.sample_data[0]["city"], "Oslo")

        # Offer it, fix the price, publish, find it.
        word = unique("pyglacier").replace("-", "")
        datapod = market.CreateDatapod(
            pb.CreateDatapodRequest(
                dataset_id=dataset.id,
                title=f"City temperatures {word}",
                description="Daily readings from four cities",
                category="weather",
                price_mist=2_500_000_000,
            ),
            metadata=seller,
        ).datapod
        self.assertFalse(datapod.published)
        failure = self.fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            market.CreateDatapod,
            pb.CreateDatapodRequest(dataset_id=dataset.id, title="", price_mist=1),
            metadata=seller,
        )
        self.assertIn("title", failure.field_violations)
        updated = market.UpdateDatapod(
            pb.UpdateDatapodRequest(
                id=datapod.id, price_mist=PRICE, update_mask=field_mask_pb2.FieldMask(paths=["price_mist"])
            ),
            metadata=seller,
        ).datapod
        self.assertEqual(updated.price_mist, PRICE)
        self.assertEqual(updated.title, f"City temperatures {word}")
        # Unpublished: invisible to others.
        self.fails(grpc.StatusCode.NOT_FOUND, market.GetDatapod, pb.GetDatapodRequest(id=datapod.id))
        self.assertTrue(market.PublishDatapod(pb.PublishDatapodRequest(id=datapod.id), metadata=seller).datapod.published)
        found = market.SearchDatapods(pb.SearchDatapodsRequest(query=word, sort_by=pb.SORT_BY_PRICE_ASC))
        self.assertEqual([d.id for d in found.datapods], [datapod.id])
        public = market.GetDatapod(pb.GetDatapodRequest(id=datapod.id)).datapod
        self.assertEqual(public.seller.name, seller_name.replace("-", " ").title())
        self.assertEqual(public.price_mist, PRICE)

        # The buyer proves a Sui address with their wallet.
        buyer = self.sign_in(market, buyer_name)
        wallet = SuiWallet()
        challenge = market.GetSuiAddressChallenge(pb.GetSuiAddressChallengeRequest(), metadata=buyer).message
        self.assertTrue(challenge)
        self.fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            market.ProveSuiAddress,
            pb.ProveSuiAddressRequest(signature=wallet.sign_personal_message(b"something else")),
            metadata=buyer,
        )
        proven = market.ProveSuiAddress(
            pb.ProveSuiAddressRequest(signature=wallet.sign_personal_message(challenge.encode())),
            metadata=buyer,
        ).user
        self.assertEqual(proven.sui_address, wallet.address)

        # Pay (the stand-in ledger: one payment of the price, one far too small), then buy.
        ledger = StandInLedger((wallet.address, PRICE), (wallet.address, 1))
        try:
            paid, underpaid = ledger.digests
            buyer_key = X25519PrivateKey.generate()
            buyer_public = buyer_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            failure = self.fails(
                grpc.StatusCode.FAILED_PRECONDITION,
                market.CreatePurchase,
                pb.CreatePurchaseRequest(
                    datapod_id=datapod.id, payment_tx_digest=underpaid, buyer_public_key=buyer_public
                ),
                metadata=buyer,
            )
            self.assertEqual(failure.reason, "UNDERPAID")
            request = pb.CreatePurchaseRequest(
                datapod_id=datapod.id,
                payment_tx_digest=paid,
                buyer_public_key=buyer_public,
                idempotency_key=unique("buy"),
            )
            purchase = market.CreatePurchase(request, metadata=buyer).purchase
            self.assertIn(
                purchase.status, (pb.PURCHASE_STATUS_PROCESSING, pb.PURCHASE_STATUS_COMPLETED)
            )
            self.assertEqual(purchase.amount_mist, PRICE)
            self.assertEqual(market.CreatePurchase(request, metadata=buyer).purchase.id, purchase.id)
        finally:
            ledger.stop()

        completed = wait_until(
            lambda: (
                p := market.GetPurchase(pb.GetPurchaseRequest(id=purchase.id), metadata=buyer).purchase
            ).status == pb.PURCHASE_STATUS_COMPLETED and p,
            20,
            "the purchase to complete",
        )
        self.assertEqual(completed.escrow_status, pb.ESCROW_STATUS_RELEASED)
        # The seller sees the sale; someone else's token cannot read the purchase.
        self.assertEqual(
            market.GetPurchase(pb.GetPurchaseRequest(id=purchase.id), metadata=seller).purchase.buyer.name,
            buyer_name.replace("-", " ").title(),
        )

        # Download and decrypt with the buyer's key; only the buyer may.
        messages = list(market.DownloadDataset(pb.DownloadDatasetRequest(purchase_id=purchase.id), metadata=buyer))
        header, plain = decrypt_download(messages, buyer_key)
        self.assertEqual(plain, CSV)
        self.assertEqual(header.data_hash, hashlib.sha256(CSV).hexdigest())
        self.assertEqual(header.file_type, "text/csv")
        self.fails(
            grpc.StatusCode.NOT_FOUND,
            market.DownloadDataset,
            pb.DownloadDatasetRequest(purchase_id=purchase.id),
            metadata=seller,
        )

        # Review; the counters follow.
        review = market.CreateReview(
            pb.CreateReviewRequest(purchase_id=purchase.id, rating=5, comment="Accurate"), metadata=buyer
        ).review
        self.assertEqual(review.rating, 5)
        self.fails(
            grpc.StatusCode.ALREADY_EXISTS,
            market.CreateReview,
            pb.CreateReviewRequest(purchase_id=purchase.id, rating=1),
            metadata=buyer,
        )
        reviews = market.ListReviews(pb.ListReviewsRequest(datapod_id=datapod.id)).reviews
        self.assertEqual([(r.rating, r.comment) for r in reviews], [(5, "Accurate")])
        after = market.GetDatapod(pb.GetDatapodRequest(id=datapod.id)).datapod
        self.assertEqual((after.purchase_count, after.average_rating), (1, 5.0))
        history = market.ListPurchaseHistory(pb.ListPurchaseHistoryRequest(), metadata=buyer).purchases
        self.assertEqual([(p.id, p.review.comment) for p in history], [(purchase.id, "Accurate")])
        analytics = market.GetSellerAnalytics(pb.GetSellerAnalyticsRequest(), metadata=seller)
        self.assertEqual(
            (analytics.total_sales, analytics.total_revenue_mist, analytics.total_downloads),
            (1, PRICE, 1),
        )

        # Ask the assistant about the datapod: the answer streams, then both messages are stored.
        conversation = market.CreateConversation(
            pb.CreateConversationRequest(title="Weather data"), metadata=buyer
        ).conversation
        deltas, result = [], None
        for event in market.SendMessage(
            pb.SendMessageRequest(
                conversation_id=conversation.id, content="What columns does it have?", datapod_id=datapod.id
            ),
            metadata=buyer,
            timeout=30,
        ):
            if event.WhichOneof("event") == "delta":
                deltas.append(event.delta)
            else:
                result = event.result
        answer = "".join(deltas)
        self.assertEqual(answer, f"You asked: What columns does it have? (about City temperatures {word})")
        self.assertEqual(result.assistant_message.content, answer)
        self.assertEqual(result.user_message.content, "What columns does it have?")
        stored = market.GetConversation(pb.GetConversationRequest(id=conversation.id), metadata=buyer).conversation
        self.assertEqual([(m.role, m.content) for m in stored.messages], [("user", "What columns does it have?"), ("assistant", answer)])
        self.assertEqual(stored.total_tokens, result.total_tokens)
        self.assertGreater(stored.total_tokens, 0)
