//! The bookkeeping of one family's claims: effective values, frontend contenders and winners,
//! affinity name identities, storing a service's fragment.

use super::*;

impl FamilyCompiler {
    /// The effective claim on an element: the one of its frontend's winner, if the winner
    /// claims the element at all.
    pub(super) fn effective_claim(&self, id: &ElemId) -> Option<&Claim> {
        let claims = self.claims.get(id)?;
        match self.frontend_winner(id) {
            None => Some(&claims.first),
            Some(winner) => claims.iter().find(|c| c.owner == *winner),
        }
    }

    pub(super) fn effective(&self, id: &ElemId) -> Option<Option<Value>> {
        self.effective_claim(id).map(|c| c.value.clone())
    }

    /// The winner of the element's frontend, when more than one port claims that frontend.
    fn frontend_winner(&self, id: &ElemId) -> Option<&Arc<ServicePortName>> {
        if self.contested_frontends.is_empty() {
            return None;
        }
        let fe = FrontendKey::of_element(id.0, &id.1)?;
        let c = self.frontends.get(&fe)?;
        c.is_contested().then(|| &c.winner().rank.owner)
    }

    fn add_contender(&mut self, fe: FrontendKey, rank: FrontendRank) {
        note!(self, frontends, &fe);
        match self.frontends.entry(fe) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                self.contested_frontends.insert(fe);
                e.get_mut().insert(rank);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Contenders::new(rank));
            }
        }
    }

    pub(super) fn remove_contender(&mut self, fe: &FrontendKey, owner: &ServicePortName) {
        note!(self, frontends, fe);
        if let Some(c) = self.frontends.get_mut(fe) {
            if !c.remove(|r| *r.rank.owner == *owner) {
                self.frontends.remove(fe);
            }
        }
    }

    /// Recomputes the losers of the given frontends.
    pub(super) fn resolve_frontends<'a>(
        &mut self,
        touched: impl IntoIterator<Item = &'a FrontendKey>,
    ) {
        for fe in touched {
            note!(self, lost, fe);
            match self.frontends.get(fe).filter(|c| c.is_contested()) {
                Some(c) => {
                    self.lost.insert(*fe, Conflict::of(*fe, c));
                }
                None => {
                    self.lost.remove(fe);
                }
            }
        }
    }

    fn add_claim(&mut self, id: ElemId, owner: Arc<ServicePortName>, value: Option<Value>) {
        note!(self, claims, &id);
        let claim = Claim { owner, value };
        match self.claims.entry(id) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                self.contested.insert(e.key().clone());
                e.get_mut().insert(claim);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Claims {
                    first: claim,
                    rest: None,
                });
            }
        }
    }

    pub(super) fn remove_claim(&mut self, id: &ElemId, owner: &ServicePortName) {
        note!(self, claims, id);
        if let Some(list) = self.claims.get_mut(id) {
            if !list.remove(owner) {
                self.claims.remove(id);
            }
        }
    }

    /// Registers the affinity identities of `svc` (`None`: the service is gone) in place of
    /// the ones registered for `key` before, adding every identity involved to `touched`.
    pub(super) fn register_affinity(
        &mut self,
        key: &ServiceKey,
        svc: Option<&rudder_model::Service>,
        ctx: &Ctx,
        touched: &mut BTreeSet<u128>,
    ) {
        note!(self, affinity_regs, key);
        for (id, rank) in self.affinity_regs.remove(key).into_iter().flatten() {
            touched.insert(id);
            note!(self, affinity_ids, &id);
            if let Some(c) = self.affinity_ids.get_mut(&id) {
                if !c.remove(|r| r.owner == rank.owner) {
                    self.affinity_ids.remove(&id);
                }
            }
        }
        let regs = svc.map_or_else(Vec::new, |s| service::affinity_ids(self.family, s, ctx));
        for (id, rank) in &regs {
            touched.insert(*id);
            note!(self, affinity_ids, id);
            match self.affinity_ids.entry(*id) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().insert(rank.clone())
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Contenders::new(rank.clone()));
                }
            }
        }
        if !regs.is_empty() {
            self.affinity_regs.insert(key.clone(), regs);
        }
    }

    /// Recomputes which service ports lose their affinity names among the `touched`
    /// identities, and returns the services whose refusal changed (they must be recompiled).
    pub(super) fn resolve_affinity_names(
        &mut self,
        touched: &BTreeSet<u128>,
    ) -> BTreeSet<ServiceKey> {
        let mut changed = BTreeSet::new();
        if touched.is_empty() {
            return changed;
        }
        if let Some(j) = self.journal.as_mut()
            && j.name_losers.is_none()
        {
            j.name_losers = Some(self.name_losers.clone());
        }
        let mut old = NameLosers::default();
        self.name_losers.retain(|port, (id, winner)| {
            if touched.contains(id) {
                old.insert(port.clone(), (*id, winner.clone()));
                false
            } else {
                true
            }
        });
        for id in touched {
            let Some(c) = self.affinity_ids.get(id) else {
                continue;
            };
            for loser in c.losers() {
                let entry = (*id, c.winner().owner.clone());
                if old.remove(&*loser.owner) != Some(entry.clone()) {
                    changed.insert(loser.owner.service.clone());
                }
                self.name_losers.insert((*loser.owner).clone(), entry);
            }
        }
        // Ports that lost before and no longer do.
        changed.extend(old.into_keys().map(|p| p.service));
        changed
    }

    /// Records a compiled fragment: its claims and classes. Returns the classes it needs
    /// that did not exist yet.
    pub(super) fn insert_fragment(&mut self, key: &ServiceKey, frag: Fragment) -> Vec<Class> {
        let mut stored = Stored {
            claims: Vec::with_capacity(frag.claims.len()),
            objects: frag.objects,
            no_local: frag.no_local,
            frontends: frag.frontends,
        };
        for (fe, rank) in &stored.frontends {
            self.add_contender(*fe, rank.clone());
        }
        for (total, n) in self.no_local.iter_mut().zip(frag.no_local) {
            *total += u64::from(n);
        }
        for (set, k, owner, value) in frag.claims {
            stored
                .claims
                .push((set, k.clone(), owner.clone(), value.clone()));
            self.add_claim((set, k), owner, value);
        }
        let new: Vec<Class> = frag
            .classes
            .into_iter()
            .filter(|c| self.classes.insert(*c))
            .collect();
        if !stored.claims.is_empty() || !stored.objects.is_empty() || !stored.frontends.is_empty() {
            note!(self, frags, key);
            self.frags.insert(key.clone(), stored);
        }
        new
    }
}
