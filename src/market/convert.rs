//! Rows -> protobuf messages.

use prost_types::ListValue;
use serde_json::Value;

use super::queries::{
    ConversationRow, DatapodRow, DatasetRow, MessageRow, PurchaseRow, ReviewRow, UserRow,
};
use crate::proto::{json_to_struct, json_to_value, quintet::market::v1 as pb, timestamp};

fn sample(value: Option<&Value>) -> Option<ListValue> {
    match value {
        Some(Value::Array(items)) => Some(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        _ => None,
    }
}

pub fn user(row: &UserRow) -> pb::User {
    pb::User {
        id: row.id.to_string(),
        name: row.name.clone().unwrap_or_default(),
        profile_image: row.profile_image.clone().unwrap_or_default(),
        average_rating: row.average_rating,
        total_sales: row.total_sales,
        total_purchases: row.total_purchases,
        create_time: Some(timestamp(row.created_at)),
    }
}

pub fn current_user(row: UserRow) -> pb::CurrentUser {
    pb::CurrentUser {
        user: Some(user(&row)),
        google_id: row.google_id,
        email: row.email,
        salt: row.salt,
        sui_address: row.sui_address.unwrap_or_default(),
    }
}

pub fn dataset(row: &DatasetRow) -> pb::Dataset {
    pb::Dataset {
        id: row.id.to_string(),
        blob_id: row.blob_id.clone(),
        file_size: row.file_size,
        storage_size: row.storage_size,
        file_type: row.file_type.clone(),
        data_hash: row.data_hash.clone(),
        encryption_key_hash: row.encryption_key_hash.clone(),
        encryption_iv: row.encryption_iv.clone(),
        schema: row.schema.as_ref().and_then(|s| json_to_struct(&s.0)),
        sample_data: sample(row.sample_data.as_ref().map(|s| &s.0)),
    }
}

/// A datapod for listings: without its dataset's schema and sample, which GetDatapod returns
/// (they may be up to tens of KiB each; a page of them would be megabytes).
pub fn datapod_summary(row: DatapodRow) -> pb::Datapod {
    let mut datapod = datapod(row);
    if let Some(dataset) = &mut datapod.dataset {
        dataset.schema = None;
        dataset.sample_data = None;
    }
    datapod
}

pub fn datapod(row: DatapodRow) -> pb::Datapod {
    pb::Datapod {
        id: row.id.to_string(),
        seller: Some(user_of(
            row.seller_id,
            row.seller_name,
            row.seller_image,
            row.seller_rating,
            row.seller_sales,
            row.seller_purchases,
            row.seller_created_at,
        )),
        title: row.title,
        description: row.description.unwrap_or_default(),
        category: row.category.unwrap_or_default(),
        price_mist: row.price_mist,
        dataset: Some(pb::Dataset {
            id: row.dataset_id.to_string(),
            blob_id: row.walrus_blob_id,
            file_size: row.file_size.unwrap_or_default(),
            storage_size: row.walrus_storage_size.unwrap_or_default(),
            file_type: row.file_type.unwrap_or_default(),
            data_hash: row.data_hash.unwrap_or_default(),
            encryption_key_hash: row.encryption_key_hash,
            encryption_iv: row.encryption_iv,
            schema: row.schema.as_ref().and_then(|s| json_to_struct(&s.0)),
            sample_data: sample(row.sample_data.as_ref().map(|s| &s.0)),
        }),
        published: row.published,
        purchase_count: row.purchase_count,
        average_rating: row.average_rating,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

#[allow(clippy::too_many_arguments)]
fn user_of(
    id: uuid::Uuid,
    name: Option<String>,
    image: Option<String>,
    rating: f64,
    sales: i32,
    purchases: i32,
    created: time::OffsetDateTime,
) -> pb::User {
    pb::User {
        id: id.to_string(),
        name: name.unwrap_or_default(),
        profile_image: image.unwrap_or_default(),
        average_rating: rating,
        total_sales: sales,
        total_purchases: purchases,
        create_time: Some(timestamp(created)),
    }
}

pub fn purchase_status(status: &str) -> pb::PurchaseStatus {
    match status {
        "pending_payment" => pb::PurchaseStatus::PendingPayment,
        "processing" => pb::PurchaseStatus::Processing,
        "completed" => pb::PurchaseStatus::Completed,
        "refunded" => pb::PurchaseStatus::Refunded,
        _ => pb::PurchaseStatus::Unspecified,
    }
}

fn escrow_status(status: Option<&str>) -> pb::EscrowStatus {
    match status {
        Some("holding") => pb::EscrowStatus::Holding,
        Some("released") => pb::EscrowStatus::Released,
        Some("refunded") => pb::EscrowStatus::Refunded,
        _ => pb::EscrowStatus::Unspecified,
    }
}

pub fn purchase(row: PurchaseRow) -> pb::Purchase {
    let review = match (row.review_id, row.review_rating) {
        (Some(id), Some(rating)) => Some(pb::Review {
            id: id.to_string(),
            purchase_id: row.id.to_string(),
            datapod_id: row.datapod_id.to_string(),
            buyer: None,
            rating,
            comment: row.review_comment.unwrap_or_default(),
            create_time: row.review_created_at.map(timestamp),
            update_time: row.review_updated_at.map(timestamp),
        }),
        _ => None,
    };
    pb::Purchase {
        id: row.id.to_string(),
        datapod_id: row.datapod_id.to_string(),
        datapod_title: row.datapod_title,
        datapod_category: row.datapod_category.unwrap_or_default(),
        seller: Some(user_of(
            row.seller_id,
            row.seller_name,
            row.seller_image,
            row.seller_rating,
            row.seller_sales,
            row.seller_purchases,
            row.seller_created_at,
        )),
        buyer: Some(user_of(
            row.buyer_id,
            row.buyer_name,
            row.buyer_image,
            row.buyer_rating,
            row.buyer_sales,
            row.buyer_purchases,
            row.buyer_created_at,
        )),
        payment_tx_digest: row.payment_tx_digest,
        amount_mist: row.amount_mist,
        price_mist: row.price_mist,
        status: purchase_status(&row.status).into(),
        escrow_status: escrow_status(row.escrow_status.as_deref()).into(),
        buyer_public_key: row.buyer_public_key.into(),
        review,
        refund_reason: row.refund_reason.unwrap_or_default(),
        idempotency_key: row.idempotency_key.unwrap_or_default(),
        create_time: Some(timestamp(row.created_at)),
        complete_time: row.completed_at.map(timestamp),
        update_time: Some(timestamp(row.updated_at)),
    }
}

pub fn review(row: ReviewRow) -> pb::Review {
    pb::Review {
        id: row.id.to_string(),
        purchase_id: row.purchase_id.to_string(),
        datapod_id: row.datapod_id.to_string(),
        buyer: Some(user_of(
            row.buyer_id,
            row.buyer_name,
            row.buyer_image,
            row.buyer_rating,
            row.buyer_sales,
            row.buyer_purchases,
            row.buyer_created_at,
        )),
        rating: row.rating,
        comment: row.comment.unwrap_or_default(),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

pub fn chat_message(row: MessageRow) -> pb::ChatMessage {
    pb::ChatMessage {
        id: row.id.to_string(),
        role: row.role,
        content: row.content,
        tokens: row.tokens.unwrap_or_default(),
        datapod_id: row
            .context
            .as_ref()
            .and_then(|c| c.0.get("datapod_id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        create_time: Some(timestamp(row.created_at)),
    }
}

pub fn conversation(row: ConversationRow, messages: Vec<MessageRow>) -> pb::Conversation {
    pb::Conversation {
        id: row.id.to_string(),
        title: row.title.unwrap_or_default(),
        total_tokens: row.total_tokens,
        messages: messages.into_iter().map(chat_message).collect(),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}
