//! Rows -> protobuf messages.

use prost_types::ListValue;
use serde_json::Value;

use super::queries::{DatapodRow, DatasetRow, UserRow};
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
        seller: Some(pb::User {
            id: row.seller_id.to_string(),
            name: row.seller_name.unwrap_or_default(),
            profile_image: row.seller_image.unwrap_or_default(),
            average_rating: row.seller_rating,
            total_sales: row.seller_sales,
            total_purchases: row.seller_purchases,
            create_time: Some(timestamp(row.seller_created_at)),
        }),
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
